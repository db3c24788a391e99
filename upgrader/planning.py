"""The planner: from an observed installation and a target, a plan that never skips a major.

``make_plan`` is pure. It takes what was observed (control-plane version, proxies per
namespace, Kubernetes version, installed extensions), the target, what can be installed
(``Offering``: the repository's releases, completed by the catalog, or the catalog alone
offline), the spec and the acknowledgements, and returns a ``Plan``:

- ``k`` majors ahead -> ``k`` hops, each to the newest offered release of the next major,
  the last one to the exact target (or the spec's explicit ``path``, checked to move one
  major at a time). Within a major: one hop. Back by one major (or to an older release of
  the same major): one rollback hop. Anything further back is refused.
- Each hop is the same cycle: preflight -> CRDs -> control plane -> verify -> extensions ->
  data-plane waves -> verify, so the data plane reaches each hop's major before the next
  control-plane hop.
- Refusals carry a code and a reason: ``hop-too-large``, ``unknown-target``,
  ``rollback-too-far``, ``kubernetes-unsupported``, ``unacknowledged-note``,
  ``data-plane-skew``, ``missing-major``, ``unknown-current``, ``unsupported-hop`` (a hop the
  executor cannot run: a rollback across the 2.12 chart split), ``wave-namespace-missing`` (a
  wave names a namespace the cluster does not have), ``pinned-versions`` (image versions
  pinned in the values or on workloads, under the spec's default ``pins: refuse``; see
  ``upgrader.pins``). A wave that restarts nothing, or one baked for less than the metric
  gates' window (``gates.metricsWindow``), is a plan warning, not a refusal.
- Each hop's ``steps`` are typed actions (``PreflightStep``, ``UpgradeRelease``,
  ``KeepRelease``, ``AdoptSplitCharts``, ``VerifyControlPlane``, ``RestartWave``,
  ``VerifyDataPlane``): the executor runs exactly these, in this order. ``HOP_KINDS`` lists
  every kind of hop the planner makes.

A refused plan is still a plan (with ``refused`` set and no hops) so reviewers see why.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from upgrader import windows
from upgrader.catalog import Catalog, KubernetesRange, Major, Note
from upgrader.dataplane import Inventory, inventory, selects
from upgrader.errors import InputError
from upgrader.gatewayapi import GatewayCrd, HopLeg, plan_gateway_api
from upgrader.inputs import validation_error
from upgrader.metrics import public_url
from upgrader.pins import Pin, describe, remedies, value_pins, workload_pins
from upgrader.ports import DataPlaneView
from upgrader.redaction import redact_values
from upgrader.spec import Spec, parse_duration
from upgrader.states import RunState
from upgrader.values import Outgoing, outgoing, values_file
from upgrader.versions import Version, parse_chart_version

CRDS, CONTROL_PLANE, LEGACY = "linkerd-crds", "linkerd-control-plane", "linkerd2"
HA_FILE = "values-ha.yaml"  # shipped inside the control-plane chart (and the linkerd2 chart)
KUBERNETES_WAIVER = "kubernetes-version"  # the preflight check id a spec may waive
EXTENSIONS = ("linkerd-viz", "linkerd-multicluster", "linkerd-jaeger", "linkerd-smi")
EXTENSION_LABEL = "linkerd.io/extension"
EXTENSION_NAMESPACES = {
    "linkerd-viz": "linkerd-viz",
    "linkerd-multicluster": "linkerd-multicluster",
    "linkerd-jaeger": "linkerd-jaeger",
    "linkerd-smi": "linkerd-smi",
}
# Rough minutes for the duration estimate (what reviewers plan a window with).
MINUTES = {"preflight": 1, "crds": 1, "control-plane": 3, "verify": 1, "extension": 2, "restart": 1}


def step_kind(step: _StepBase) -> str:
    """The kind of step whose recorded durations estimate this one (a wave: one round of restarts)."""
    if isinstance(step, UpgradeRelease | AdoptSplitCharts):
        return f"helm:{step.release}"
    if isinstance(step, RestartWave):
        return "restart"
    return str(getattr(step, "action", "step"))  # preflight, keep-release, verify-control-plane, verify-data-plane


def default_seconds(kind: str) -> int:
    """What a step of ``kind`` takes when no earlier run recorded one (a wave: per round of restarts)."""
    if kind == f"helm:{CRDS}":
        return MINUTES["crds"] * 60
    if kind in (f"helm:{CONTROL_PLANE}", f"helm:{LEGACY}"):
        return MINUTES["control-plane"] * 60
    if kind.startswith("helm:"):
        return MINUTES["extension"] * 60
    return {"preflight": 60, "keep-release": 0, "restart": MINUTES["restart"] * 60}.get(kind, MINUTES["verify"] * 60)


def restart_rounds(pods: Mapping[str, int], per_namespace: int, lanes: int) -> int:
    """Rounds of throttled restarts for ``pods`` (namespace -> workloads or pods to restart).

    A namespace's rounds follow one another whatever the number of lanes (``maxNamespaces``): the
    wave takes at least its busiest namespace's rounds, and at least the rounds of all shared out
    over the lanes.
    """
    per_ns = [math.ceil(n / per_namespace) for n in pods.values() if n > 0]
    return max(max(per_ns, default=0), math.ceil(sum(per_ns) / max(1, lanes)))


def wave_seconds(restart: int, rounds: int, bake_time: str) -> int:
    """A wave: its rounds of restarts, then its bake time."""
    return restart * rounds + parse_duration(bake_time)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Refusal(_Out):
    code: str
    reason: str


class _StepBase(_Out):
    """What every step shows reviewers: the run state it runs in, a name and a detail.

    ``STATES`` is where a step of that type may run: a step in any other state is refused
    when the plan is built or read back (a stored plan cannot smuggle in a wrong route).
    """

    STATES: ClassVar[frozenset[RunState]] = frozenset()
    state: RunState
    name: str
    detail: str = ""
    chart: str | None = None
    chart_version: str | None = None
    estimated_seconds: int = 0  # recorded durations of this step's kind, else the defaults (upgrader.windows)

    @model_validator(mode="after")
    def _state_fits(self) -> _StepBase:
        if self.state not in self.STATES:
            allowed = ", ".join(sorted(self.STATES))
            raise ValueError(f"a {type(self).__name__} step runs in {allowed}, not {self.state}")
        return self


class PreflightStep(_StepBase):
    """Run the preflight checks for this hop; unwaived errors stop the run before anything changes."""

    STATES = frozenset({RunState.PREFLIGHT})
    action: Literal["preflight"] = "preflight"


class UpgradeRelease(_StepBase):
    """``helm upgrade`` one release to ``chart_version`` (control plane: with the hop's values)."""

    STATES = frozenset({RunState.UPGRADING_CRDS, RunState.UPGRADING_CONTROL_PLANE, RunState.UPGRADING_EXTENSIONS})
    action: Literal["upgrade-release"] = "upgrade-release"
    release: str
    namespace: str
    send_values: bool = False  # the control plane's user values (migrated) and the spec's overrides
    ha_values: bool = False  # HA: the target chart's values-ha.yaml under the user's own values (``hop_values``)


class KeepRelease(_StepBase):
    """Leave a release as it is (a rollback keeps the CRDs); the step checks it is still there."""

    STATES = frozenset({RunState.UPGRADING_CRDS})
    action: Literal["keep-release"] = "keep-release"
    release: str
    namespace: str


class AdoptSplitCharts(_StepBase):
    """The 2.12 chart split: hand the ``linkerd2`` release's objects to the new release and install it.

    ``part`` ``crds`` re-labels the CRDs for ``linkerd-crds`` and installs it; ``control-plane``
    re-labels every other object for ``linkerd-control-plane``, installs it with the migrated
    values, and then removes the ``linkerd2`` release record (never its objects).
    """

    STATES = frozenset({RunState.UPGRADING_CRDS, RunState.UPGRADING_CONTROL_PLANE})
    action: Literal["adopt-split-charts"] = "adopt-split-charts"
    part: Literal["crds", "control-plane"]
    release: str
    namespace: str
    legacy_release: str
    legacy_namespace: str
    ha_values: bool = False  # control-plane part, HA: the target chart's values-ha.yaml under the user's values


class VerifyControlPlane(_StepBase):
    """Deployments available, pods and ``linkerd-config`` at the hop's version, the injector meshes."""

    STATES = frozenset({RunState.VERIFYING_CONTROL_PLANE})
    action: Literal["verify-control-plane"] = "verify-control-plane"


class RestartWave(_StepBase):
    """Restart one wave's workloads (``wave`` indexes ``Hop.waves``), throttled and gated."""

    STATES = frozenset({RunState.RESTARTING_DATA_PLANE})
    action: Literal["restart-wave"] = "restart-wave"
    wave: int


class VerifyDataPlane(_StepBase):
    """Every restarted workload runs the hop's proxy."""

    STATES = frozenset({RunState.VERIFYING_DATA_PLANE})
    action: Literal["verify-data-plane"] = "verify-data-plane"


Step = Annotated[
    PreflightStep
    | UpgradeRelease
    | KeepRelease
    | AdoptSplitCharts
    | VerifyControlPlane
    | RestartWave
    | VerifyDataPlane,
    Field(discriminator="action"),
]
STEP_TYPES: tuple[type[_StepBase], ...] = (
    PreflightStep,
    UpgradeRelease,
    KeepRelease,
    AdoptSplitCharts,
    VerifyControlPlane,
    RestartWave,
    VerifyDataPlane,
)


HopKind = Literal["upgrade", "rollback", "data-plane", "linkerd2-upgrade", "chart-split"]
HOP_KINDS: tuple[str, ...] = get_args(HopKind)  # every kind of hop the planner makes; each is run by a test


class WavePlan(_Out):
    name: str
    namespaces: list[str]
    selector: dict[str, str] = Field(default_factory=dict)
    bake_time: str = "0s"
    # meshed workloads to restart per namespace when planned (estimates); empty: not counted (offline, old plans)
    workloads: dict[str, int] = Field(default_factory=dict)


class Hop(_Out):
    from_: str = Field(serialization_alias="from")
    to: str
    major: str
    kind: HopKind
    charts: dict[str, str]
    steps: list[Step]
    waves: list[WavePlan]
    values_changes: dict[str, Any] = Field(default_factory=dict)
    notes: list[dict[str, Any]] = Field(default_factory=list)
    estimated_minutes: int = 0
    # the Gateway API switches the hop sends with linkerd-crds (upgrader.gatewayapi), over that release's user values
    crds_values: dict[str, Any] = Field(default_factory=dict)


class WindowFit(_Out):
    """Whether the run fits in one maintenance window; else the first step of the next window."""

    fits_one_window: bool
    first_of_next_window: str | None = None
    margin_seconds: int = 0


class Plan(_Out):
    from_: str | None = Field(serialization_alias="from")
    to: str
    spec: str
    hops: list[Hop] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    data_plane: dict[str, dict[str, int]] = Field(default_factory=dict)
    values_strategy: str = "reset-then-reuse"
    waivers: list[str] = Field(default_factory=list)
    acknowledged: list[str] = Field(default_factory=list)
    estimated_minutes: int = 0
    on_failure: str = "pause"
    dry_run: bool = False
    window: dict[str, Any] | None = None
    windows: list[str] = Field(default_factory=list)  # maintenance windows, e.g. "tue,wed,thu 01:00-05:00 UTC"
    window_fit: WindowFit | None = None  # with windows: does the run fit in one (else where the next one starts)
    gates: dict[str, Any] = Field(default_factory=dict)
    values_overrides: dict[str, Any] = Field(default_factory=dict)  # redacted
    warnings: list[str] = Field(default_factory=list)  # what a reviewer must look at; they do not block
    high_availability: bool | None = None  # the installation is HA (None: not observed, e.g. offline)
    high_availability_evidence: list[str] = Field(default_factory=list)  # what discovery decided it on
    pins: list[Pin] = Field(default_factory=list)  # versions held by values or workloads (upgrader.pins)
    gateway_api: str = "auto"  # the spec's gatewayAPI choice
    gateway_api_crds: list[dict[str, Any]] | None = None  # the route CRDs as observed (None: not observed)
    kubernetes: dict[str, Any] | None = None  # the live version and the hop that first needs a newer one
    refused: Refusal | None = None

    def as_json(self) -> dict[str, Any]:
        """The stable JSON contract (see README)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, data: Any, *, source: str = "plan") -> Plan:
        """A plan from its JSON contract (a plan file, a checkpoint's stored plan); ``data`` is left as it was.

        Anything that is not a plan is one InputError naming ``source`` and each field path -> what was expected.
        """
        hint = "write a plan with: upgrader plan --to VERSION -o json --out plan.json"
        if not isinstance(data, dict):
            raise InputError(f"{source} is not a plan: expected a JSON object, found {_json_kind(data)}", hint=hint)
        copy = {k: v for k, v in data.items() if k not in ("from", "digest")}
        if "from" in data:
            copy["from_"] = data["from"]
        hops = data.get("hops", [])
        if isinstance(hops, list):
            copy["hops"] = [
                {**{k: v for k, v in h.items() if k != "from"}, **({"from_": h["from"]} if "from" in h else {})}
                if isinstance(h, dict)
                else h
                for h in hops
            ]
        try:
            return cls.model_validate(copy)
        except ValidationError as exc:
            raise validation_error(exc, source=source, hint=hint, aliases={"from_": "from"}) from None


def _json_kind(data: object) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    return {int: "a number", float: "a number", str: "a string", list: "a list"}.get(type(data), type(data).__name__)


@dataclass(frozen=True)
class Observed:
    """What planning needs from discovery (or from --from when offline)."""

    control_plane: Version | None
    data_plane: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # ns -> version text -> pods
    kubernetes: str | None = None
    extensions: tuple[str, ...] = ()
    control_plane_namespace: str = "linkerd"
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # for wave/spec selectors
    namespaces: frozenset[str] | None = None  # every namespace of the cluster (None: unknown, e.g. offline)
    release_namespaces: Mapping[str, str] = field(default_factory=dict)  # Helm release -> its namespace
    release_charts: Mapping[str, str] = field(default_factory=dict)  # Helm release -> its chart version now
    control_plane_release: str = CONTROL_PLANE
    control_plane_values: Mapping[str, Any] = field(default_factory=dict)  # its user values (for pins)
    data_plane_view: DataPlaneView | None = None  # namespaces, workloads, pods (for pins); None offline
    high_availability: bool = False  # the control plane was installed HA (values-ha.yaml)
    ha_evidence: tuple[str, ...] = ()  # what discovery decided high_availability on (empty: not observed)
    # whose user values the first hop carries when the control plane's last revision is not deployed
    # (``discovery.carried_note``); None when they are the current revision's
    values_carried: str | None = None
    gateway_api: tuple[GatewayCrd, ...] | None = None  # the Gateway API route CRDs (None: not observed, offline)
    crds_values: Mapping[str, Any] = field(default_factory=dict)  # linkerd-crds' user values (its switches)
    extension_releases: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # chart -> (release, namespace)

    def namespace_of(self, release: str) -> str:
        """Where a release lives (the control plane's namespace unless discovery found it elsewhere)."""
        return self.release_namespaces.get(release, self.control_plane_namespace)


Offering = Mapping[Version, Mapping[str, str]]  # release -> chart name -> chart version


def build_offering(
    catalog: Catalog, repo: Mapping[str, list[tuple[str, str]]] | None
) -> tuple[dict[Version, dict[str, str]], list[str]]:
    """What can be installed: the repository's releases (completed by the catalog), or the catalog.

    ``repo`` maps chart name -> [(chart version, app version)] as ``helm search repo
    --versions`` lists them; linkerd-crds has no app version, so its version for a release
    comes from the catalog (or equals a calendar control-plane chart version).
    """
    catalog_releases = {v: dict(r.charts) for v, r in catalog.releases_by_version().items()}
    if repo is None:
        return catalog_releases, ["offline: chart versions come from the bundled catalog"]
    notes: list[str] = []
    offered: dict[Version, dict[str, str]] = {}
    crds_versions = {v for v, _ in repo.get(CRDS, [])}
    for chart_version, app_version in repo.get(CONTROL_PLANE, []):
        try:
            version = catalog.parse(app_version)
        except InputError:
            continue  # the repo may carry versions we cannot place; they are never planned
        if version in offered and _chart_order(offered[version][CONTROL_PLANE]) >= _chart_order(chart_version):
            continue  # a newer chart of the same release is already chosen
        charts = {CONTROL_PLANE: chart_version}
        known = catalog_releases.get(version, {})
        crds = known.get(CRDS) or (chart_version if chart_version in crds_versions else None)
        if crds is None:
            notes.append(f"{version}: the repository does not say which linkerd-crds chart it needs; not planned")
            continue
        charts[CRDS] = crds
        offered[version] = charts
    _offer_legacy(catalog, repo.get(LEGACY, []), offered)
    for ext in EXTENSIONS:
        for chart_version, app_version in repo.get(ext, []):
            try:
                version = catalog.parse(app_version)
            except InputError:
                continue
            if version in offered:
                offered[version].setdefault(ext, chart_version)
    missing = sorted(
        (
            v
            for v in catalog_releases
            if v not in offered and (CONTROL_PLANE in catalog_releases[v] or LEGACY in catalog_releases[v])
        ),
        key=lambda v: v.sort_key,
    )
    if missing:
        shown = ", ".join(map(str, missing[-5:]))
        more = f" and {len(missing) - 5} older" if len(missing) > 5 else ""
        notes.append(f"known to the catalog but not offered by the repository: {shown}{more}")
    return offered, notes


def _offer_legacy(catalog: Catalog, rows: list[tuple[str, str]], offered: dict[Version, dict[str, str]]) -> None:
    """Releases before the 2.12 split, offered with their one chart, ``linkerd2`` (the newest chart of each)."""
    for chart_version, app_version in rows:
        try:
            version = catalog.parse(app_version)
        except InputError:
            continue
        if version.major < 12 and (
            version not in offered or _chart_order(offered[version][LEGACY]) < _chart_order(chart_version)
        ):
            offered[version] = {LEGACY: chart_version}


class _Refused(Exception):
    """Internal signal: planning stops with this code and reason (never escapes make_plan)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def crds_would_go_back(installed: str | None, planned: str | None) -> bool:
    """Whether upgrading linkerd-crds from ``installed`` to ``planned`` would move the CRDs backwards.

    CRDs never move back except by an explicit CRD rollback (``rollback --include-crds``, which
    checks storedVersions first): an older chart may no longer serve a version still stored.
    """
    return chart_older(planned, installed)


def chart_older(version: str | None, than: str | None) -> bool:
    """Whether chart ``version`` is older than ``than`` (False when either is missing or unreadable)."""
    if not version or not than:
        return False
    order = _chart_order(version), _chart_order(than)
    return order[0] != (-1,) and order[1] != (-1,) and order[0] < order[1]


def _chart_order(text: str) -> tuple[int, ...]:
    try:
        return parse_chart_version(text).sort_key
    except InputError:
        return (-1,)


def _newest_in_major(offering: Offering, major: int, channel_of: Version) -> Version | None:
    candidates = [v for v in offering if v.major == major]
    same_channel = [v for v in candidates if v.channel == channel_of.channel]
    pool = same_channel or candidates
    return max(pool, key=lambda v: v.sort_key) if pool else None


def _gates(spec: Spec) -> dict[str, Any]:
    """The spec's gates for the plan, the Prometheus URL without its credentials (plans get reviewed in PRs)."""
    gates = spec.gates.model_dump(by_alias=True, exclude_none=True)
    if "prometheusUrl" in gates:
        gates["prometheusUrl"] = public_url(gates["prometheusUrl"])
    return gates


def _resolve_waves(
    spec: Spec, meshed: list[str], excluded: set[str], labels: Mapping[str, Mapping[str, str]] | None = None
) -> list[WavePlan]:
    """Each wave's namespaces: those it names, plus those its selector matches, minus earlier waves'."""
    labels = labels or {}
    remaining = [ns for ns in meshed if _in_scope(spec, ns, excluded, labels)]
    waves = []
    for wave in spec.data_plane.waves:
        chosen = [
            ns
            for ns in remaining
            if "*" in wave.namespaces
            or ns in wave.namespaces
            or (wave.selector and ns in labels and selects(labels[ns], wave.selector))
        ]
        remaining = [ns for ns in remaining if ns not in chosen]
        waves.append(WavePlan(name=wave.name, namespaces=chosen, selector=wave.selector, bake_time=wave.bake_time))
    return waves


def _in_scope(spec: Spec, ns: str, excluded: set[str], labels: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether the data-plane settings let waves restart ``ns`` (not excluded by name or selector)."""
    dp = spec.data_plane
    return (
        ns not in excluded
        and not (dp.include_selector and ns in labels and not selects(labels[ns], dp.include_selector))
        and not (dp.exclude_selector and ns in labels and selects(labels[ns], dp.exclude_selector))
    )


def _short_bakes(spec: Spec, hops: Sequence[Hop]) -> list[str]:
    """With metric gates, a wave that restarts something and bakes for less than ``gates.metricsWindow``:
    its "after" still reads mostly the pods from before the wave, so a bad canary can pass (once per wave)."""
    if spec.gates.prometheus_url is None:
        return []
    window = spec.gates.metrics_window
    short: dict[str, str] = {}
    for wave in (w for h in hops for w in h.waves):
        if wave.namespaces and parse_duration(wave.bake_time) < parse_duration(window):
            short.setdefault(wave.name, wave.bake_time)
    return [
        f"wave {name}: bakeTime {bake} is shorter than gates.metricsWindow {window}, so its metric gate judges "
        f"mostly pods from before the wave; give it a bakeTime of at least {window} (or a shorter metricsWindow)"
        for name, bake in short.items()
    ]


def _check_waves(spec: Spec, observed: Observed) -> list[str]:
    """A wave naming a namespace the cluster does not have is refused; one that restarts nothing is a warning.

    Judged only when the cluster's namespaces are known (not offline): a typo such as ``[shpo]``
    or a namespace with nothing meshed (its workloads scaled to 0) would otherwise leave a wave
    silently empty, and a canary would disappear without a word.
    """
    known = observed.namespaces
    if known is None:
        return []
    waves = spec.data_plane.waves
    for wave in waves:
        missing = [ns for ns in wave.namespaces if ns != "*" and ns not in known]
        if missing:
            similar = sorted({m for ns in missing for m in difflib.get_close_matches(ns, sorted(known), n=3)})
            hint = f" (similar: {', '.join(similar)})" if similar else ""
            raise _Refused(
                "wave-namespace-missing",
                f"wave {wave.name} names namespace(s) the cluster does not have: {', '.join(missing)}{hint}; "
                "fix the wave in the spec (dataPlane.waves)",
            )
    excluded = set(spec.data_plane.exclude_namespaces) | {observed.control_plane_namespace}
    excluded |= {EXTENSION_NAMESPACES[e] for e in observed.extensions if e in EXTENSION_NAMESPACES}
    labels = observed.namespace_labels
    resolved = _resolve_waves(spec, sorted(observed.data_plane), excluded, labels)
    earlier: set[str] = set()
    warnings = []
    for wave, planned in zip(waves, resolved, strict=True):
        shown = ",".join(f"{k}={v}" for k, v in sorted(wave.selector.items()))
        if wave.selector and not any(selects(found, wave.selector) for found in labels.values()):
            warnings.append(f"wave {wave.name}: selector {shown} matches no namespace")
        if not planned.namespaces:
            why = []
            for ns in wave.namespaces:
                if ns == "*":
                    why.append("no meshed namespace is left for '*'")
                elif ns not in observed.data_plane:
                    why.append(f"{ns} has no meshed pod (nothing runs there, or its workloads are scaled to 0)")
                elif not _in_scope(spec, ns, excluded, labels):
                    why.append(f"{ns} is excluded (control-plane or extension namespace, or dataPlane exclusions)")
                elif ns in earlier:
                    why.append(f"{ns} is restarted by an earlier wave")
            if wave.selector and any(selects(found, wave.selector) for found in labels.values()):
                why.append(f"selector {shown} matches no meshed namespace left")
            warnings.append(f"wave {wave.name} restarts nothing: {'; '.join(why) or 'it names no namespace'}")
        earlier |= set(planned.namespaces)
    return warnings


def _estimate(
    hop_waves: list[WavePlan], pods: Mapping[str, int], spec: Spec, extensions: int, *, data_plane_only: bool = False
) -> int:
    dp = spec.data_plane
    minutes = MINUTES["preflight"] + MINUTES["verify"]
    if not data_plane_only:
        minutes += MINUTES["crds"] + MINUTES["control-plane"] + MINUTES["verify"]
    minutes += extensions * MINUTES["extension"]
    for wave in hop_waves:
        per_ns = [
            math.ceil(pods.get(ns, 1) / dp.max_concurrent_per_namespace) * MINUTES["restart"] for ns in wave.namespaces
        ]
        lanes = max(1, dp.max_namespaces)
        minutes += math.ceil(sum(per_ns) / lanes) + math.ceil(parse_duration(wave.bake_time) / 60)
    return minutes


def make_plan(
    observed: Observed,
    target: Version,
    offering: Offering,
    catalog: Catalog,
    spec: Spec,
    *,
    acks: frozenset[str] = frozenset(),
    offering_notes: list[str] | None = None,
    durations: Mapping[str, Sequence[float]] | None = None,
) -> Plan:
    """Plan the way from ``observed`` to ``target``; see the module docstring.

    ``durations`` are step durations earlier runs recorded per step kind (``step_kind``): each
    step's ``estimated_seconds`` comes from them, else from ``default_seconds``. With maintenance
    windows, a step longer than any window is refused (``step-longer-than-window``).
    """
    current = observed.control_plane
    notes = list(offering_notes or [])
    acknowledged = sorted(acks | set(spec.acknowledge))
    base: dict[str, Any] = {
        "from_": str(current) if current else None,
        "to": str(target),
        "spec": spec.name,
        "notes": notes,
        "values_strategy": spec.values.strategy,
        "data_plane": {ns: dict(v) for ns, v in sorted(observed.data_plane.items())},
        "waivers": list(spec.waivers),
        "acknowledged": acknowledged,
        "on_failure": spec.on_failure,
        "dry_run": spec.dry_run,
        "window": spec.window.model_dump(by_alias=True) if spec.window else None,
        "windows": [str(r) for r in spec.window_rules()],
        "gates": _gates(spec),
        "values_overrides": redact_values(spec.values.overrides),
        "high_availability": observed.high_availability if observed.ha_evidence else None,
        "high_availability_evidence": list(observed.ha_evidence),
        "gateway_api": spec.gateway_api,
        "gateway_api_crds": [c.as_dict() for c in observed.gateway_api] if observed.gateway_api is not None else None,
    }
    if observed.control_plane is not None and not observed.kubernetes:
        notes.append("Kubernetes version unknown (offline): supported ranges were not checked; pass --kubernetes")
    seen: dict[str, Any] = {}
    try:
        hops = _plan_hops(
            observed,
            target,
            offering,
            catalog=catalog,
            spec=spec,
            acknowledged=set(acknowledged),
            notes=notes,
            seen=seen,
        )
        warnings = _check_waves(spec, observed) if hops else []
    except _Refused as refused:  # a refused plan still says which hops the cluster's Kubernetes supports
        base["kubernetes"] = seen.get("kubernetes")
        return Plan(**base, refused=Refusal(code=refused.code, reason=refused.reason))
    base["kubernetes"] = _kubernetes_summary(observed, hops, catalog, notes)
    scope = sorted({ns for h in hops for w in h.waves for ns in w.namespaces})
    # one inventory for the pins and the workload counts: a pass over every pod of the data plane
    view = observed.data_plane_view
    inv = _inventory(view, scope, spec) if view is not None and scope else None
    pins = find_pins(observed, spec, [h.to for h in hops], scope, inventory=inv)
    if pins and spec.pins == "refuse":
        reason = f"versions are pinned: {describe(pins)}. {remedies(pins)}"
        return Plan(**base, pins=pins, refused=Refusal(code="pinned-versions", reason=reason))
    base["pins"] = pins
    if observed.values_carried and hops and (step := control_plane_step(hops[0])) is not None:
        carrying = step.model_copy(update={"detail": f"{step.detail}; values carried: {observed.values_carried}"})
        hops[0] = hops[0].model_copy(update={"steps": [carrying if s is step else s for s in hops[0].steps]})
        warnings.append(f"hop 1 carries the {observed.values_carried}")
    try:
        hops, gateway_warnings = _with_gateway_api(hops, observed, spec, catalog, notes)
    except _Refused as refused:
        return Plan(**base, refused=Refusal(code=refused.code, reason=refused.reason))
    warnings += gateway_warnings + _short_bakes(spec, hops)
    unknown = sorted({h.major for h in hops if catalog.major(int(h.major.split(".")[1])) is None})
    if unknown:
        notes.append(f"no catalog entry for {', '.join(unknown)}: Kubernetes range and notes unchecked")
    counts = _workload_counts(observed, spec, scope, inventory=inv)
    hops = [_with_estimates(_with_workloads(h, counts), spec, durations or {}) for h in hops]
    rules = spec.window_rules()
    if rules and hops:
        fit = windows.plan_fit(
            rules, ((f"hop {n}, {s.name}", s.estimated_seconds) for n, h in enumerate(hops, 1) for s in h.steps)
        )
        if fit.too_long:
            return Plan(**base, refused=Refusal(code="step-longer-than-window", reason=fit.too_long))
        base["window_fit"] = WindowFit(
            fits_one_window=fit.fits_one_window,
            first_of_next_window=fit.first_of_next_window,
            margin_seconds=max(r.margin for r in rules),
        )
    total = math.ceil(sum(s.estimated_seconds for h in hops for s in h.steps) / 60)
    return Plan(**base, hops=hops, warnings=warnings, estimated_minutes=total)


def step_estimate(
    step: _StepBase,
    wave: WavePlan | None,
    spec: Spec,
    durations: Mapping[str, Sequence[float]],
    pending: Mapping[str, int] | None = None,
) -> int:
    """About how long ``step`` takes (seconds): the plan, ``apply --wait-for-window`` and the executor's gate
    all ask this one function.

    Recorded durations of the step's kind (``step_kind``), else ``default_seconds``; a step with no
    work is 0 (a kept release, a release without an offered chart, a wave with nothing to restart).
    A wave is its rounds of restarts of ``pending`` workloads per namespace (default: the plan's count,
    one per namespace when it has none), then its bake time.
    """
    if isinstance(step, KeepRelease) or (isinstance(step, UpgradeRelease) and step.chart_version is None):
        return 0
    kind = step_kind(step)
    seconds = windows.estimate(durations.get(kind, ()), default_seconds(kind))
    if wave is None:
        return seconds
    if pending is None:
        known = wave.workloads
        pending = {ns: known.get(ns, 0) for ns in wave.namespaces} if known else dict.fromkeys(wave.namespaces, 1)
    dp = spec.data_plane
    rounds = restart_rounds(pending, dp.max_concurrent_per_namespace, dp.max_namespaces)
    return wave_seconds(seconds, rounds, wave.bake_time) if rounds else 0


def _with_estimates(hop: Hop, spec: Spec, durations: Mapping[str, Sequence[float]]) -> Hop:
    steps = [
        s.model_copy(
            update={
                "estimated_seconds": step_estimate(
                    s, hop.waves[s.wave] if isinstance(s, RestartWave) else None, spec, durations
                )
            }
        )
        for s in hop.steps
    ]
    minutes = math.ceil(sum(s.estimated_seconds for s in steps) / 60)
    return hop.model_copy(update={"steps": steps, "estimated_minutes": minutes})


def _inventory(view: DataPlaneView, namespaces: Sequence[str], spec: Spec) -> Inventory:
    """The meshed workloads of ``namespaces`` the spec's data-plane filters leave in."""
    dp = spec.data_plane
    return inventory(
        view,
        namespaces,
        exclude_namespaces=dp.exclude_namespaces,
        include_selector=dp.include_selector or None,
        exclude_selector=dp.exclude_selector or None,
    )


def _workload_counts(
    observed: Observed, spec: Spec, namespaces: Sequence[str], *, inventory: Inventory | None = None
) -> dict[str, int]:
    """Meshed workloads a restart would touch, per namespace (restarts are per workload, not per pod);
    offline (no data plane observed), the meshed pods per namespace, an upper bound. ``inventory``: that of
    ``namespaces``, already taken (else taken here)."""
    view = observed.data_plane_view
    if view is None:
        return {ns: sum(observed.data_plane.get(ns, {}).values()) for ns in namespaces if ns in observed.data_plane}
    targets = (inventory or _inventory(view, namespaces, spec)).targets
    counts = dict.fromkeys(namespaces, 0)
    for w in targets:
        counts[w.namespace] = counts.get(w.namespace, 0) + 1
    return counts


def _with_workloads(hop: Hop, counts: Mapping[str, int]) -> Hop:
    waves = [
        w.model_copy(update={"workloads": {ns: counts[ns] for ns in w.namespaces if ns in counts}}) for w in hop.waves
    ]
    return hop.model_copy(update={"waves": waves})


def _kubernetes_summary(
    observed: Observed, hops: list[Hop], catalog: Catalog, notes: list[str]
) -> dict[str, Any] | None:
    """The plan's Kubernetes line: which hop first needs another Kubernetes (a waived plan still says so)."""
    moving = [(n, h) for n, h in enumerate(hops, start=1) if h.kind != "data-plane"]
    if not moving or observed.control_plane is None:
        return None
    first, start = moving[0][0], catalog.parse(moving[0][1].from_)
    path = kubernetes_path(observed.kubernetes, start, [catalog.parse(h.to) for _, h in moving], catalog, first=first)
    if path is None:
        return None
    if path["summary"]:
        notes.append(f"Kubernetes {path['live']}: {path['summary']}")
    else:
        notes.append(f"Kubernetes {path['live']} is supported by every hop")
    return path


def _with_gateway_api(
    hops: list[Hop], observed: Observed, spec: Spec, catalog: Catalog, notes: list[str]
) -> tuple[list[Hop], list[str]]:
    """The hops with their Gateway API linkerd-crds values and notes (``upgrader.gatewayapi``); warnings."""
    legs = [
        HopLeg(
            previous=catalog.parse(h.from_),
            stop=catalog.parse(h.to),
            sends_crds=any(isinstance(s, UpgradeRelease) and s.release == CRDS for s in h.steps),
        )
        for h in hops
    ]
    touched = [
        leg for leg in legs if leg.sends_crds and (m := catalog.major(leg.stop.major)) and m.gateway_api is not None
    ]
    if observed.gateway_api is None:
        if touched:
            notes.append(
                "Gateway API CRDs not observed (offline): what each hop's linkerd-crds does to them is decided by "
                "preflight (crds.gateway-api) against the cluster"
            )
        return hops, []
    decided = plan_gateway_api(
        observed.gateway_api,
        legs,
        catalog,
        choice=spec.gateway_api,
        release=CRDS,
        namespace=observed.namespace_of(CRDS),
        user_values=observed.crds_values,
    )
    if decided.refusal is not None:
        raise _Refused(*decided.refusal)
    out = []
    for hop, values, hop_notes in zip(hops, decided.values, decided.notes, strict=True):
        if values:
            shown = ", ".join(f"{k}: {str(v).lower()}" for k, v in values.items())
            steps = [
                s.model_copy(update={"detail": f"{s.detail}; Gateway API: {shown}"})
                if isinstance(s, UpgradeRelease) and s.release == CRDS
                else s
                for s in hop.steps
            ]
            out.append(
                hop.model_copy(update={"steps": steps, "crds_values": values, "notes": [*hop.notes, *hop_notes]})
            )
        else:
            out.append(hop)
    return out, decided.warnings


def find_pins(
    observed: Observed,
    spec: Spec,
    targets: list[str],
    namespaces: Sequence[str],
    *,
    inventory: Inventory | None = None,
) -> list[Pin]:
    """Image versions pinned in the control plane's values (with the spec's overrides), then workloads in
    ``namespaces`` whose proxy a restart would not move to every target (the values' own proxy pin is
    listed once, not per workload). ``inventory``: that of ``namespaces``, already taken (else taken here)."""
    if not targets:
        return []
    release = observed.control_plane_release
    pins = value_pins(
        observed.control_plane_values,
        spec.values.overrides,
        release=release,
        namespace=observed.namespace_of(release),
        targets=targets,
    )
    view = observed.data_plane_view
    if view is not None and namespaces:
        inv = inventory or _inventory(view, namespaces, spec)
        pins += workload_pins(inv.targets, view.namespaces, view.pods, targets=targets)
    return pins


def _check_skew(observed: Observed, current: Version, catalog: Catalog, notes: list[str]) -> set[str]:
    """The data plane must be within one major of the control plane; returns namespaces a major behind."""
    skewed, behind, unjudged = [], set(), []
    for ns, versions in sorted(observed.data_plane.items()):
        for text in versions:
            try:
                dp = catalog.parse(text)
            except InputError:
                unjudged.append(f"{ns} ({text})")  # digest-pinned or unplaceable: listed, not judged
                continue
            if abs(dp.major - current.major) > 1:
                skewed.append(f"{ns} runs {dp}")
            elif dp.major < current.major:
                behind.add(ns)
    if unjudged:
        notes.append(f"proxy versions that could not be judged: {', '.join(unjudged)}")
    if skewed:
        raise _Refused(
            "data-plane-skew",
            f"the data plane is more than one major away from the control plane ({current}): "
            f"{'; '.join(skewed)}. Restart those workloads on {current} first",
        )
    return behind


def _waypoints(current: Version, target: Version, offering: Offering, catalog: Catalog, spec: Spec) -> list[Version]:
    """Where each hop ends: the spec's path, or the newest release of every major between, then the target."""
    if target not in offering:
        where = (
            "the catalog knows it but the repository does not offer it"
            if target in catalog.releases_by_version()
            else "neither the repository nor the catalog knows it"
        )
        raise _Refused("unknown-target", f"cannot plan to {target}: {where}")
    distance = target.major - current.major
    if distance < -1:
        raise _Refused(
            "rollback-too-far",
            f"{current} -> {target} rolls back {-distance} majors; only one major back is supported. "
            f"Roll back to 2.{current.major - 1} first, then plan again",
        )
    if spec.path:
        upward = target > current
        between = {
            w
            for w in (catalog.parse(p) for p in spec.path)
            if (current < w < target if upward else target < w < current)
        }
        return [*sorted(between, key=lambda w: w.sort_key, reverse=not upward), target]
    waypoints = []
    for major in range(current.major + 1, target.major):
        newest = _newest_in_major(offering, major, target)
        if newest is None:
            raise _Refused("missing-major", f"no release of 2.{major} is offered; a plan cannot skip it")
        waypoints.append(newest)
    return [*waypoints, target]


def _check_stop(
    previous: Version,
    stop: Version,
    offering: Offering,
    *,
    supported_range: KubernetesRange | None,
    observed: Observed,
    spec: Spec,
    notes: list[str],
    where: dict[str, Any] | None = None,
) -> None:
    if abs(stop.major - previous.major) > 1:
        raise _Refused(
            "hop-too-large",
            f"{previous} -> {stop} crosses {abs(stop.major - previous.major)} majors in one hop; "
            "add the missing majors to the spec's path",
        )
    if stop not in offering:
        raise _Refused("unknown-target", f"cannot plan through {stop}: it is not offered")
    if supported_range is None or not observed.kubernetes or supported_range.contains(observed.kubernetes):
        return
    supported = f"Linkerd {stop} supports Kubernetes {supported_range.min}-{supported_range.max}"
    if KUBERNETES_WAIVER in spec.waivers:
        notes.append(f"waived {KUBERNETES_WAIVER}: {supported}, the cluster runs {observed.kubernetes}")
        return
    first = f"; {where['summary']}" if where and where.get("summary") else ""
    if _older(observed.kubernetes, supported_range.min):
        hint = f"upgrade Kubernetes first, or waive {KUBERNETES_WAIVER} in the spec to plan anyway"
    else:  # the cluster is newer than the hop supports: Kubernetes does not go back
        hint = (
            f"the cluster's Kubernetes is newer than {stop} supports and cannot be downgraded: waive "
            f"{KUBERNETES_WAIVER} in the spec to plan anyway (Linkerd {stop} is untested on {observed.kubernetes}), "
            "or take the path on a cluster whose Kubernetes every hop supports"
        )
    raise _Refused("kubernetes-unsupported", f"{supported}; the cluster runs {observed.kubernetes}{first} ({hint})")


def kubernetes_path(
    live: str | None, current: Version, waypoints: list[Version], catalog: Catalog, *, first: int = 1
) -> dict[str, Any] | None:
    """Which hops the live Kubernetes supports: the first hop that needs another one, the hops whose range ends
    below the cluster's (too new for them), the first that needs a newer one and the last supported before it.

    ``first`` is the number of the first waypoint's hop (a data-plane catch-up hop comes before it).
    None when the live version is unknown (offline without --kubernetes).
    """
    if not live:
        return None
    rows, previous = [], current
    for number, stop in enumerate(waypoints, start=first):
        kr = catalog.kubernetes_for(stop)
        ok = kr is None or kr.contains(live)
        row: dict[str, Any] = {"hop": number, "from": str(previous), "to": str(stop), "supported": ok}
        if kr is not None:
            row |= {"min": kr.min, "max": kr.max}
        rows.append(row)
        previous = stop
    bad = next((r for r in rows if not r["supported"]), None)
    too_new = [r for r in rows if not r["supported"] and "min" in r and not _older(live, r["min"])]
    too_old = [r for r in rows if not r["supported"] and r not in too_new]
    cut = too_old[0]["hop"] if too_old else None
    good = [r for r in rows if r["supported"] and (cut is None or r["hop"] < cut)]
    last = good[-1] if good else None
    summary = None
    if bad is not None:
        parts = []
        if too_new:
            head = too_new[0]
            parts.append(
                f"hop {head['hop']} ({head['from']} -> {head['to']}) supports at most Kubernetes {head['max']}; "
                f"the cluster runs {live}: {_hop_list(too_new)} need an older Kubernetes than the cluster's"
            )
        if too_old:
            head = too_old[0]
            parts.append(
                f"hop {head['hop']} ({head['from']} -> {head['to']}) is the first that needs Kubernetes "
                f"{head['min']} or newer"
            )
        supported = [r for r in rows if r["supported"]]
        if not supported:
            parts.append(f"Kubernetes {live} supports none of the hops")
        elif too_new:
            parts.append(f"Kubernetes {live} is supported by {_hop_list(supported)}")
        elif last is not None:
            parts.append(
                f"the last hop Kubernetes {live} supports is hop {last['hop']} ({last['from']} -> {last['to']})"
            )
        summary = "; ".join(parts)
    return {
        "live": live,
        "hops": rows,
        "last_supported_hop": last["hop"] if last else None,
        "first_unsupported_hop": bad["hop"] if bad else None,
        "older_kubernetes_hops": [r["hop"] for r in too_new],  # hops whose range ends below the cluster's
        "summary": summary,
    }


def _hop_list(rows: list[dict[str, Any]]) -> str:
    """``hop 3``, ``hops 1-2``, ``hops 1-2, 5``: the hop numbers of ``rows``, runs collapsed."""
    numbers = [r["hop"] for r in rows]
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    return f"hops {text}" if len(numbers) > 1 else f"hop {text}"


def _older(live: str, floor: str) -> bool:
    return not KubernetesRange(min=floor, max="99.0").contains(live)


def removed_extension_refusal(
    number: int,
    previous: Version,
    stop: Version,
    info: Major,
    *,
    releases: Iterable[tuple[str, str, str]],
    labelled: Mapping[str, Mapping[str, str]],
    busy: Collection[str] | None,
) -> str | None:
    """Why a hop into a major that no longer ships an installed extension is refused (None: it is not).

    ``releases``: (chart, release, namespace) of the Helm releases; ``labelled``: namespace -> labels;
    ``busy``: namespaces that still hold workloads (None: unknown). A namespace labelled for the extension
    counts only while it holds workloads: ``helm uninstall`` leaves the namespace and its label behind."""
    for gone in info.removed_extensions:
        found = [(name, ns) for chart, name, ns in releases if chart == gone.chart]
        left = sorted(
            ns
            for ns, labels in labelled.items()
            if labels.get(EXTENSION_LABEL) == gone.extension and (busy is None or ns in busy)
        )
        if not found and not left:
            continue
        note = info.note(gone.note)
        if found:
            how = "; ".join(f"helm uninstall {name} -n {ns}" for name, ns in found)
            what = " and ".join(f"the Helm release {ns}/{name} (chart {gone.chart})" for name, ns in found)
        else:
            how = f"linkerd {gone.extension} uninstall | kubectl delete -f -"
            what = f"namespace {', '.join(left)} labelled {EXTENSION_LABEL}={gone.extension}, with workloads,"
        return (
            f"hop {number} ({previous} -> {stop}) removes the {gone.extension} extension ({gone.note}: "
            f"{note.text if note else 'no longer shipped'}), and {what} is installed. Uninstall it first: "
            f"{how}; then plan again"
        )
    return None


def _check_removed_extensions(number: int, previous: Version, stop: Version, info: Major, observed: Observed) -> None:
    """An extension the hop's major no longer ships refuses the hop while it is installed (no --ack lifts it)."""
    view = observed.data_plane_view
    reason = removed_extension_refusal(
        number,
        previous,
        stop,
        info,
        releases=[(chart, name, ns) for chart, (name, ns) in observed.extension_releases.items()]
        or [(e, e, observed.namespace_of(e)) for e in observed.extensions],
        labelled=observed.namespace_labels,
        busy={w.namespace for w in view.workloads} if view is not None else None,
    )
    if reason is not None:
        raise _Refused("extension-removed", reason)


def _plan_hops(
    observed: Observed,
    target: Version,
    offering: Offering,
    *,
    catalog: Catalog,
    spec: Spec,
    acknowledged: set[str],
    notes: list[str],
    seen: dict[str, Any] | None = None,
) -> list[Hop]:
    """The hops; ``seen["kubernetes"]``: the Kubernetes path over the waypoints, once known (for a refusal)."""
    current = observed.control_plane
    if current is None:
        raise _Refused(
            "unknown-current",
            "no installed Linkerd control plane was found; "
            "install Linkerd first, or plan offline with --from VERSION --offline",
        )
    behind = _check_skew(observed, current, catalog, notes)
    pods = {ns: sum(v.values()) for ns, v in observed.data_plane.items()}
    excluded = set(spec.data_plane.exclude_namespaces) | {observed.control_plane_namespace}
    excluded |= {EXTENSION_NAMESPACES[e] for e in observed.extensions if e in EXTENSION_NAMESPACES}
    meshed = sorted(observed.data_plane)
    hops: list[Hop] = []
    if behind - excluded:
        # Proxies a major behind must reach the current major before the control plane moves on.
        waves = _resolve_waves(spec, sorted(behind - excluded), excluded, observed.namespace_labels)
        hops.append(_catch_up(current, waves, spec, pods))
    if target == current:
        if not hops:
            notes.append(f"already at {target}: nothing to do")
        return hops
    waypoints = _waypoints(current, target, offering, catalog, spec)
    _check_left_behind(
        spec,
        meshed=meshed,
        excluded=excluded - {observed.control_plane_namespace},
        current=current,
        waypoints=waypoints,
        observed=observed,
        notes=notes,
    )
    previous = current
    first = len(hops) + 1  # after a data-plane catch-up hop, if any
    where = kubernetes_path(observed.kubernetes, current, waypoints, catalog, first=first)
    if seen is not None:
        seen["kubernetes"] = where
    for number, stop in enumerate(waypoints, start=first):
        info = catalog.major(stop.major)
        _check_stop(
            previous,
            stop,
            offering,
            supported_range=catalog.kubernetes_for(stop),
            observed=observed,
            spec=spec,
            notes=notes,
            where=where,
        )
        # Changing channel inside a major (enterprise <-> edge) re-applies that release's CRDs: not a rollback.
        is_rollback = stop < previous and not (stop.major == previous.major and stop.channel != previous.channel)
        if is_rollback and stop.major < 12 <= previous.major:
            raise _Refused(
                "unsupported-hop",
                f"{previous} -> {stop} would undo the 2.12 chart split (linkerd-crds and linkerd-control-plane "
                f"back into one {LEGACY} release), which upgrader cannot run; restore 2.{stop.major} from a backup",
            )
        hop_notes = [] if is_rollback or info is None or stop.major == previous.major else info.notes
        if hop_notes and info is not None:
            _check_removed_extensions(number, previous, stop, info, observed)
        missing = [n.id for n in hop_notes if n.blocking and n.id not in acknowledged]
        if missing:
            raise _Refused(
                "unacknowledged-note",
                f"2.{stop.major} has blocking upgrade notes: {', '.join(missing)}; read them "
                f"(upgrader plan -o markdown) and acknowledge with --ack {missing[0]}",
            )
        hops.append(
            _hop(
                previous,
                stop,
                dict(offering[stop]),
                spec=spec,
                observed=observed,
                rollback=is_rollback,
                notes=hop_notes,
                info=info,
                waves=_resolve_waves(spec, meshed, excluded, observed.namespace_labels),
                pods=pods,
            )
        )
        previous = stop
    return hops


def _check_left_behind(
    spec: Spec,
    *,
    meshed: list[str],
    excluded: set[str],
    current: Version,
    waypoints: list[Version],
    observed: Observed,
    notes: list[str],
) -> None:
    """Namespaces no wave restarts stay on today's proxies; two majors on, that is unsupported."""
    covered = {ns for w in _resolve_waves(spec, meshed, excluded, observed.namespace_labels) for ns in w.namespaces}
    extension_ns = {EXTENSION_NAMESPACES[e] for e in observed.extensions if e in EXTENSION_NAMESPACES}
    left = sorted(set(meshed) - covered - extension_ns - {observed.control_plane_namespace})
    if not left:
        return
    furthest = max(abs(w.major - current.major) for w in waypoints)
    if furthest > 1:
        raise _Refused(
            "data-plane-skew",
            f"no wave restarts {', '.join(left)}; their proxies would end {furthest} majors behind. "
            "Add them to a wave, or upgrade one major at a time",
        )
    notes.append(f"not restarted by any wave (they keep their proxies, one major behind): {', '.join(left)}")


def _wave_steps(waves: list[WavePlan]) -> list[Step]:
    return [
        RestartWave(
            state=RunState.RESTARTING_DATA_PLANE,
            name=f"wave {w.name}",
            detail=f"{', '.join(w.namespaces) or 'no meshed namespace'}; bake {w.bake_time}",
            wave=number,
        )
        for number, w in enumerate(waves)
    ]


def _catch_up(current: Version, waves: list[WavePlan], spec: Spec, pods: Mapping[str, int]) -> Hop:
    steps: list[Step] = [
        PreflightStep(state=RunState.PREFLIGHT, name="preflight", detail=f"data plane catch-up to {current}"),
        *_wave_steps(waves),
        VerifyDataPlane(
            state=RunState.VERIFYING_DATA_PLANE,
            name="verify-data-plane",
            detail=f"every meshed pod runs proxy {current}",
        ),
    ]
    return Hop(
        from_=str(current),
        to=str(current),
        major=current.major_name,
        kind="data-plane",
        charts={},
        steps=steps,
        waves=waves,
        estimated_minutes=_estimate(waves, pods, spec, 0, data_plane_only=True),
    )


def _release_steps(
    previous: Version, stop: Version, charts: dict[str, str], *, spec: Spec, observed: Observed, rollback: bool
) -> tuple[HopKind, list[Step]]:
    """The Helm steps of a hop, and the hop's kind (they decide each other)."""
    ns = observed.control_plane_namespace
    if LEGACY in charts:  # before 2.12 one chart held CRDs and control plane
        ha, ha_detail = _ha_values(spec, observed, LEGACY, charts[LEGACY])
        step = UpgradeRelease(
            state=RunState.UPGRADING_CONTROL_PLANE,
            name=LEGACY,
            chart=LEGACY,
            chart_version=charts[LEGACY],
            detail=f"helm upgrade in {observed.namespace_of(LEGACY)}; values: {spec.values.strategy}{ha_detail}",
            release=LEGACY,
            namespace=observed.namespace_of(LEGACY),
            send_values=True,
            ha_values=ha,
        )
        return ("rollback" if rollback else "linkerd2-upgrade"), [step]
    if previous.major < 12 <= stop.major:  # the 2.12 chart split (a blocking, acknowledged note)
        legacy = {"legacy_release": LEGACY, "legacy_namespace": observed.namespace_of(LEGACY), "namespace": ns}
        ha, ha_detail = _ha_values(spec, observed, CONTROL_PLANE, charts.get(CONTROL_PLANE))
        return "chart-split", [
            AdoptSplitCharts(
                state=RunState.UPGRADING_CRDS,
                name=CRDS,
                chart=CRDS,
                chart_version=charts.get(CRDS),
                detail=f"helm install adopting the CRDs of the {LEGACY} release (re-annotate meta.helm.sh/*)",
                part="crds",
                release=CRDS,
                **legacy,
            ),
            AdoptSplitCharts(
                state=RunState.UPGRADING_CONTROL_PLANE,
                name=CONTROL_PLANE,
                chart=CONTROL_PLANE,
                chart_version=charts.get(CONTROL_PLANE),
                detail=f"helm install adopting the control plane, then remove the {LEGACY} release record{ha_detail}",
                part="control-plane",
                release=CONTROL_PLANE,
                ha_values=ha,
                **legacy,
            ),
        ]
    crds: Step
    installed_crds = observed.release_charts.get(CRDS)
    if not rollback and crds_would_go_back(installed_crds, charts.get(CRDS)):
        crds = KeepRelease(
            state=RunState.UPGRADING_CRDS,
            name=CRDS,
            chart=CRDS,
            detail=f"kept at {installed_crds}: the {stop} chart {charts.get(CRDS)} is older (CRDs never move back)",
            release=CRDS,
            namespace=ns,
        )
    elif rollback:
        crds = KeepRelease(
            state=RunState.UPGRADING_CRDS,
            name=CRDS,
            chart=CRDS,
            detail="kept (CRDs are not rolled back unless --include-crds)",
            release=CRDS,
            namespace=ns,
        )
    else:
        crds = UpgradeRelease(
            state=RunState.UPGRADING_CRDS,
            name=CRDS,
            chart=CRDS,
            chart_version=charts.get(CRDS),
            detail=f"helm upgrade in {ns}",
            release=CRDS,
            namespace=ns,
        )
    ha, ha_detail = _ha_values(spec, observed, CONTROL_PLANE, charts.get(CONTROL_PLANE))
    control_plane = UpgradeRelease(
        state=RunState.UPGRADING_CONTROL_PLANE,
        name=CONTROL_PLANE,
        chart=CONTROL_PLANE,
        chart_version=charts.get(CONTROL_PLANE),
        detail=f"values: {spec.values.strategy}{ha_detail}",
        release=CONTROL_PLANE,
        namespace=ns,
        send_values=True,
        ha_values=ha,
    )
    return ("rollback" if rollback else "upgrade"), [crds, control_plane]


def _ha_values(spec: Spec, observed: Observed, chart: str, version: str | None) -> tuple[bool, str]:
    """Whether a control-plane step layers the target chart's values-ha.yaml, and what its detail says."""
    if not observed.high_availability:
        return False, ""
    if spec.values.ha_values == "keep":
        return False, f"; HA: {HA_FILE} kept as installed (values.haValues: keep)"
    return True, f"; HA: {HA_FILE} of {chart} {version or '?'} applied under your values"


def _hop(
    previous: Version,
    stop: Version,
    charts: dict[str, str],
    *,
    spec: Spec,
    observed: Observed,
    rollback: bool,
    notes: list[Note],
    info: Major | None,
    waves: list[WavePlan],
    pods: Mapping[str, int],
) -> Hop:
    kind, helm_steps = _release_steps(previous, stop, charts, spec=spec, observed=observed, rollback=rollback)
    steps: list[Step] = [
        PreflightStep(state=RunState.PREFLIGHT, name="preflight", detail=f"checks for {previous} -> {stop}"),
        *helm_steps,
        VerifyControlPlane(
            state=RunState.VERIFYING_CONTROL_PLANE,
            name="verify-control-plane",
            detail=f"deployments available, linkerd-config reports {stop}, injector answers",
        ),
    ]
    installed_ext = [e for e in observed.extensions if e in EXTENSIONS]
    note_dicts = [n.model_dump() for n in notes]
    for ext in installed_ext:
        if ext not in charts:
            note_dicts.append(
                {
                    "id": f"{ext}-not-offered",
                    "text": f"no {ext} chart is offered for {stop}: left as is",
                    "blocking": False,
                }
            )
            continue
        steps.append(
            UpgradeRelease(
                state=RunState.UPGRADING_EXTENSIONS,
                name=ext,
                chart=ext,
                chart_version=charts[ext],
                detail="helm upgrade",
                release=ext,
                namespace=observed.namespace_of(ext)
                if ext in observed.release_namespaces
                else EXTENSION_NAMESPACES[ext],
            )
        )
    steps += _wave_steps(waves)
    steps.append(
        VerifyDataPlane(
            state=RunState.VERIFYING_DATA_PLANE, name="verify-data-plane", detail=f"every meshed pod runs proxy {stop}"
        )
    )
    changes: dict[str, Any] = {}
    if info is not None and not rollback and stop.major != previous.major:
        changes = info.values.model_dump(exclude_defaults=True)
    return Hop(
        from_=str(previous),
        to=str(stop),
        major=stop.major_name,
        kind=kind,
        charts={c: v for c, v in charts.items() if c not in EXTENSIONS or c in installed_ext},  # what it touches
        steps=steps,
        waves=waves,
        values_changes=changes,
        notes=note_dicts,
        estimated_minutes=_estimate(waves, pods, spec, len(installed_ext)),
    )


def hop_values(
    hop: Hop,
    spec: Spec,
    catalog: Catalog,
    *,
    user_values: dict[str, Any],
    target_defaults: dict[str, Any],
    ha_target: dict[str, Any] | None = None,
    ha_installed: dict[str, Any] | None = None,
) -> Outgoing:
    """The values a hop sends with its control-plane chart: one rule for apply, --dry-run and preflight.

    The release's user values, migrated by the catalog's values changes of the hop's major
    (upgrades only), the spec's overrides, under the spec's strategy (see ``values.outgoing``).
    When the hop's control-plane step says ``ha_values`` (an HA installation, ``values.haValues:
    target``), ``ha_target`` (the target chart's values-ha.yaml, see ``ha_layers``) goes under the
    user's own values: the user values without ``ha_installed`` (the installed chart's
    values-ha.yaml). A rollback hop does the same with the older chart's file: the result is what
    a fresh HA install of that chart with the user's own values holds.
    """
    major = int(hop.major.split(".")[1])
    changes = [m.values for m in catalog.majors if m.major == major]
    layered = wants_ha_values(hop, spec) and ha_target is not None
    return outgoing(
        spec.values.strategy,
        target_defaults=target_defaults,
        user_values=user_values,
        overrides=spec.values.overrides,
        changes=changes if hop.kind != "rollback" else [],
        ha_target=ha_target if layered else None,
        ha_installed=ha_installed if layered else None,
    )


def wants_ha_values(hop: Hop, spec: Spec) -> bool:
    """Whether the hop's control-plane step layers the target chart's values-ha.yaml (then fetch the files)."""
    step = control_plane_step(hop)
    return step is not None and step.ha_values and spec.values.ha_values == "target"


def ha_layers(
    hop: Hop, spec: Spec, installed: tuple[str, str] | None, read: Callable[[str, str], str | None]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The two values-ha.yaml layers ``hop_values`` takes: the target chart's and the installed chart's.

    ``installed`` is the chart name and version of the release the user values are read from
    (the linkerd2 release in the 2.12 split); ``read(chart, version)`` is the text of that
    chart's values-ha.yaml (None when it ships none). (None, None) when the hop layers nothing.
    """
    step = control_plane_step(hop)
    if step is None or step.chart_version is None or not wants_ha_values(hop, spec):
        return None, None
    chart = step.chart or step.release
    target = values_file(read(chart, step.chart_version), f"{HA_FILE} of {chart} {step.chart_version}")
    if installed is None:
        return target, None
    return target, values_file(read(*installed), f"{HA_FILE} of {installed[0]} {installed[1]}")


def control_plane_step(hop: Hop) -> UpgradeRelease | AdoptSplitCharts | None:
    """The step that sends values to the control-plane chart (none in a data-plane hop)."""
    for step in hop.steps:
        if isinstance(step, UpgradeRelease) and step.send_values:
            return step
        if isinstance(step, AdoptSplitCharts) and step.part == "control-plane":
            return step
    return None
