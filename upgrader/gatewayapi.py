"""The Gateway API route CRDs across hops: who manages them, and what each hop's linkerd-crds values do to them.

Through 2.18 the linkerd-crds chart installs the Gateway API route CRDs (httproutes, grpcroutes,
tlsroutes, tcproutes) by default; from 2.19 it does not (``installGatewayAPI: false``). From
2.18 the templates carry ``helm.sh/resource-policy: keep``, so an upgrade that stops rendering
them leaves them in the cluster, still annotated for linkerd-crds but managed by no release.
Before 2.18 there is no keep policy: a hop that stops rendering them *deletes* them, and every
HTTPRoute with them. The catalog says, per major, which CRDs the chart can install, through
which values, by default or not, with which bundle and policy (``Major.gateway_api``).

``plan_gateway_api`` is pure. From the observed CRDs (``observe``: present or not, owning Helm
release, bundle version, policy, versions) and the spec's ``gatewayAPI`` choice it decides, per
CRD, whether Linkerd manages it after each hop, and returns per hop the linkerd-crds values that
say so (sent on every hop whose chart can install them, so a chart default never decides), a
note per hop naming the CRDs, owner, bundle and consequence, and warnings for CRDs handed over:

- ``auto`` (default): keep whoever manages them now. Linkerd-managed ones stay managed
  (``installGatewayAPI: true`` from 2.18 on); those owned by another release, or by none, are
  never installed, taken over or downgraded by linkerd-crds (their switches sent ``false``).
  When none is in the cluster, linkerd-crds installs them as its chart does by default through
  2.18 (unless the user's values switch them off) and keeps managing them after.
- ``linkerd``: linkerd-crds manages them (installs absent ones); one owned elsewhere is refused.
- ``external``: Linkerd stops managing them. Linkerd-managed ones are handed over on the first
  hop whose installed chart keeps them (2.18+): they stay in the cluster, unmanaged, at their
  bundle version, until a Gateway API installer adopts them. Before that hop they stay managed
  (dropping them from a chart without the keep policy would delete them).

Refused: a hop into a major that expects CRDs (``required``: 2.19+) when they are absent and
nobody will install them (``gateway-api-missing``, naming both ways out); a hop into a major whose policy
controller reads a CRD from outside linkerd-crds at an API version it does not serve (``needs_served``:
``gateway-api-versions``); ``linkerd`` with CRDs
owned elsewhere, or one value switching CRDs that must go different ways (``gateway-api-owner``).
Rollback hops send nothing: linkerd-crds is kept, so a rollback never deletes or downgrades them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from upgrader.catalog import Catalog, GatewayApi
from upgrader.ports import CustomResourceDefinition
from upgrader.versions import Version

GROUP = "gateway.networking.k8s.io"
ROUTE_CRDS = tuple(f"{r}.{GROUP}" for r in ("httproutes", "grpcroutes", "tlsroutes", "tcproutes"))
# CRDs whose storedVersions a linkerd-crds change must keep served (preflight and executor alike): Linkerd's
# own and the Gateway API ones linkerd-crds can ship (a chart that does not render one never judges it)
STORED_CHECKED = ("linkerd.io", f".{GROUP}")
RELEASE_NAME = "meta.helm.sh/release-name"
RELEASE_NAMESPACE = "meta.helm.sh/release-namespace"
BUNDLE = f"{GROUP}/bundle-version"
POLICY = "helm.sh/resource-policy"
Choice = Literal["auto", "linkerd", "external"]
CHOICES: tuple[Choice, ...] = ("auto", "linkerd", "external")


@dataclass(frozen=True)
class GatewayCrd:
    """One Gateway API route CRD as observed (``present`` False: not in the cluster)."""

    name: str
    present: bool = False
    release: str | None = None  # meta.helm.sh/release-name (None: no Helm release owns it)
    release_namespace: str | None = None
    bundle: str | None = None  # gateway.networking.k8s.io/bundle-version
    policy: str | None = None  # helm.sh/resource-policy
    served: tuple[str, ...] = ()
    storage: str = ""
    # annotated for this release, which no longer has it in its manifest (left by a keep policy): nobody's
    stale: str | None = None

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[0]

    def owned_by(self, release: str, namespace: str) -> bool:
        return self.present and self.release == release and self.release_namespace in (None, namespace)

    def owner(self) -> str:
        if not self.present:
            return "absent"
        if self.release is None:
            return f"no Helm release (stale {self.stale} annotation)" if self.stale else "no Helm release"
        return f"Helm release {self.release_namespace or '?'}/{self.release}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "present": self.present,
            "owner": self.owner(),
            "bundle": self.bundle,
            "policy": self.policy,
            "served": list(self.served),
            "storage": self.storage,
        }


def observe(
    crds: Iterable[CustomResourceDefinition], manifests: Mapping[str, Collection[str]] | None = None
) -> tuple[GatewayCrd, ...]:
    """The four route CRDs from a CRD listing, the absent ones included.

    ``manifests``: release name -> the CRD names its current manifest holds (``helm get manifest``). A CRD
    annotated for one of those releases but not in its manifest is managed by no release (``stale``): a
    keep policy left it behind. Without a manifest for its release, the annotation is trusted.
    """
    found = {c.name: c for c in crds if c.name in ROUTE_CRDS}
    manifests = manifests or {}
    out = []
    for name in ROUTE_CRDS:
        crd = found.get(name)
        if crd is None:
            out.append(GatewayCrd(name))
            continue
        notes = crd.annotations
        release = notes.get(RELEASE_NAME) or None
        stale = release is not None and release in manifests and name not in manifests[release]
        out.append(
            GatewayCrd(
                name,
                present=True,
                release=None if stale else release,
                release_namespace=None if stale else notes.get(RELEASE_NAMESPACE) or None,
                stale=release if stale else None,
                bundle=notes.get(BUNDLE) or None,
                policy=notes.get(POLICY) or None,
                served=crd.served,
                storage=crd.storage,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class HopLeg:
    """One hop as the Gateway API decision needs it."""

    previous: Version
    stop: Version
    sends_crds: bool  # the hop upgrades linkerd-crds (not a rollback, a kept or a legacy release)


@dataclass(frozen=True)
class GatewayPlan:
    values: list[dict[str, Any]]  # per hop: linkerd-crds values ({} sends nothing)
    notes: list[list[dict[str, Any]]]  # per hop
    warnings: list[str] = field(default_factory=list)
    refusal: tuple[str, str] | None = None


class GatewayRefused(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _wanted(crd: GatewayCrd, choice: Choice, release: str, namespace: str, *, any_linkerd: bool, fresh: bool) -> bool:
    """Whether Linkerd should manage ``crd`` once the plan is done (``fresh``: none of them is in the cluster
    and the user's linkerd-crds values do not switch this one off, so ``auto`` lets linkerd-crds install it as
    its chart does by default through 2.18)."""
    if crd.owned_by(release, namespace):
        return choice != "external"
    if crd.present:  # another release's or nobody's: never taken over
        if choice == "linkerd":
            raise GatewayRefused(
                "gateway-api-owner",
                f"{crd.name} is owned by {crd.owner()} (bundle {crd.bundle or 'unknown'}): linkerd-crds cannot take "
                "it over (helm refuses objects another release owns, and it could downgrade them); set gatewayAPI: "
                "auto or external in the spec to leave it where it is",
            )
        return False
    return choice == "linkerd" or (choice == "auto" and (any_linkerd or fresh))


def plan_gateway_api(
    crds: Sequence[GatewayCrd],
    legs: Sequence[HopLeg],
    catalog: Catalog,
    *,
    choice: Choice,
    release: str,
    namespace: str,
    user_values: Mapping[str, Any] | None = None,
) -> GatewayPlan:
    """Per hop, the linkerd-crds values and notes for the Gateway API CRDs; see the module docstring."""
    try:
        return _plan(crds, legs, catalog, choice=choice, release=release, namespace=namespace, user=user_values or {})
    except GatewayRefused as refused:
        return GatewayPlan([{} for _ in legs], [[] for _ in legs], refusal=(refused.code, refused.reason))


def _plan(  # noqa: PLR0912, PLR0915 - one pass over the hops; each branch is one per-CRD outcome the note names
    crds: Sequence[GatewayCrd],
    legs: Sequence[HopLeg],
    catalog: Catalog,
    *,
    choice: Choice,
    release: str,
    namespace: str,
    user: Mapping[str, Any],
) -> GatewayPlan:
    by_name = {c.name: c for c in crds}
    any_linkerd = any(c.owned_by(release, namespace) for c in crds)
    none_present = not any(c.present for c in crds)
    wanted = {
        c.name: _wanted(
            c,
            choice,
            release,
            namespace,
            any_linkerd=any_linkerd,
            fresh=none_present and not _user_off(c.name, catalog, user),
        )
        for c in crds
    }
    managed = {c.name for c in crds if c.owned_by(release, namespace)}  # by linkerd-crds, as the hops go
    present = {c.name for c in crds if c.present}  # in the cluster, as the hops go (kept ones stay)
    bundle = {c.name: c.bundle for c in crds}
    rendered: set[str] = set()  # rendered by linkerd-crds on a hop of this plan: served as its chart says
    # ``gatewayAPI: linkerd`` is a way out of a missing CRD only when no CRD is another's (it refuses those)
    linkerd_ok = not any(c.present and not c.owned_by(release, namespace) for c in crds)
    values: list[dict[str, Any]] = []
    notes: list[list[dict[str, Any]]] = []
    warnings: list[str] = []
    installed = _facts(catalog, legs[0].previous) if legs else None
    for number, leg in enumerate(legs, start=1):
        facts = _facts(catalog, leg.stop)
        if not leg.sends_crds or facts is None:
            values.append({})
            notes.append([])
            installed = facts if leg.sends_crds else installed  # a kept linkerd-crds stays what it was
            _check_required(number, leg, facts, present, choice, linkerd_ok=linkerd_ok)
            _check_served(number, leg, facts, by_name, managed | rendered)
            continue
        keep_now = installed is not None and installed.keep
        after: dict[str, bool] = {}
        forced: set[str] = set()
        for name in facts.crds:
            on = wanted.get(name, False)
            if not on and name in managed and not keep_now:
                on = True  # dropping it from a chart without the keep policy would delete it (and its routes)
                forced.add(name)
            after[name] = on
        # A switch shared with a CRD that must stay managed also renders an absent one: installed by linkerd-crds
        # with it (and handed over with it later, for external) rather than a split nobody can satisfy.
        carried = {
            name
            for name, crd_switch in facts.crds.items()
            if not after[name]
            and name not in present
            and any(after[other] and facts.crds[other] == crd_switch for other in forced)
        }
        after |= dict.fromkeys(carried, True)
        lines = []
        for name, crd_switch in facts.crds.items():
            crd = by_name.get(name, GatewayCrd(name))
            on = after[name]
            if on:
                _check_downgrade(crd, bundle.get(name), facts, number, leg)
            if name in forced:
                lines.append(
                    f"{crd.short}: stays managed by {release} on this hop (the installed chart has no "
                    f"{POLICY}: keep; dropping it now would delete it and its routes)"
                )
            elif name in carried:
                lines.append(
                    f"{crd.short}: installed by {release} ({crd_switch}: true, a switch it shares with a CRD that "
                    f"must stay managed on this hop), bundle {facts.bundle}"
                )
            elif on:
                before = bundle.get(name) or "none"
                verb = "stays managed by" if name in managed else "installed by"
                lines.append(f"{crd.short}: {verb} {release} ({crd_switch}: true), bundle {before} -> {facts.bundle}")
            elif name in managed:
                lines.append(
                    f"{crd.short}: handed over: {release} stops rendering it; it stays in the cluster "
                    f"({POLICY}: keep) at bundle {bundle.get(name) or 'unknown'}, still annotated for {release} but "
                    "managed by no release: a Gateway API installer must adopt it (helm --take-ownership, or "
                    f"re-annotate {RELEASE_NAME}/{RELEASE_NAMESPACE}) and upgrade it from there"
                )
                warnings.append(
                    f"hop {number} ({leg.previous} -> {leg.stop}) hands {name} over: no longer managed by any "
                    f"release, kept at bundle {bundle.get(name) or 'unknown'}; a Gateway API installer must adopt it"
                )
            else:
                lines.append(
                    f"{crd.short} ({crd.owner()}, bundle {crd.bundle or 'none'}): left untouched ({crd_switch}: false)"
                )
        hop_values = _switches(facts, after, leg.stop)
        for name, on in after.items():
            if on:
                managed.add(name)
                present.add(name)
                rendered.add(name)
                bundle[name] = facts.bundle
            else:
                managed.discard(name)
        _check_required(number, leg, facts, present, choice, linkerd_ok=linkerd_ok)
        _check_served(number, leg, facts, by_name, managed | rendered)
        values.append(hop_values)
        notes.append(
            [
                {
                    "id": f"gateway-api-{leg.stop.major_name}",
                    "text": f"Gateway API CRDs (gatewayAPI: {choice}): "
                    + "; ".join(lines)
                    + (RECOMMENDED if choice == "auto" and facts.install_value is not None else ""),
                    "blocking": False,
                }
            ]
        )
        installed = facts
    return GatewayPlan(values, notes, warnings)


RECOMMENDED = (
    ". From 2.18 Linkerd's docs recommend managing the Gateway API CRDs outside Linkerd (gatewayAPI: external "
    "hands them over on the first hop whose chart keeps them)"
)


def bundle_key(text: str | None) -> tuple[int, int, int, int] | None:
    """A Gateway API bundle version (``v1.2.1``, ``v0.7.1-dev``) as a comparable key; None if unreadable.
    A pre-release (``-dev``) sorts before its release."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(-.+)?", (text or "").strip())
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1)


def _check_downgrade(crd: GatewayCrd, live: str | None, facts: GatewayApi, number: int, leg: HopLeg) -> None:
    """linkerd-crds never renders a CRD at an older bundle than the one in the cluster."""
    now, then = bundle_key(live), bundle_key(facts.bundle)
    if now is None or then is None or then >= now:
        return
    raise GatewayRefused(
        "gateway-api-downgrade",
        f"hop {number} ({leg.previous} -> {leg.stop}) would have linkerd-crds render {crd.name} at Gateway API "
        f"bundle {facts.bundle}, older than the {live} in the cluster ({crd.owner()}): a downgrade that can drop "
        "fields and versions routes use. Manage the Gateway API CRDs outside Linkerd (gatewayAPI: external, from "
        "a hop whose installed chart keeps them; adopt them with your Gateway API installer), or put them back at "
        f"bundle {facts.bundle} first",
    )


def _user_off(name: str, catalog: Catalog, user: Mapping[str, Any]) -> bool:
    """The user's linkerd-crds values switch ``name`` off (its per-CRD switch, or installGatewayAPI, false)."""
    switches = {"installGatewayAPI"}
    for major in catalog.majors:
        if major.gateway_api is not None and name in major.gateway_api.crds:
            switches.add(major.gateway_api.crds[name])
    return any(user.get(s) is False for s in switches)


def _facts(catalog: Catalog, version: Version) -> GatewayApi | None:
    info = catalog.major(version.major)
    return info.gateway_api if info is not None else None


def _switches(facts: GatewayApi, after: Mapping[str, bool], stop: Version) -> dict[str, Any]:
    """The values that make the chart render exactly the CRDs ``after`` says (one switch may hold several).

    Every switch is sent, the per-CRD ones too where ``install_value`` exists: each hop's values go over
    linkerd-crds' user values, which hold the switches earlier hops sent, and a per-CRD one set there wins
    over ``install_value`` (the chart checks whether it is set), so it must be sent again, as wanted now."""
    by_switch: dict[str, set[bool]] = {}
    for name, switch in facts.crds.items():
        by_switch.setdefault(switch, set()).add(after[name])
    split = sorted(s for s, ons in by_switch.items() if len(ons) > 1)
    if split:
        shared = [n.split(".", 1)[0] for n, s in facts.crds.items() if s in split]
        raise GatewayRefused(
            "gateway-api-owner",
            f"{', '.join(shared)} share {', '.join(split)} in the linkerd-crds chart of {stop}, but one is "
            "Linkerd's and another is not: install them from one place (all elsewhere: have your Gateway API "
            "installer own every one of them, then plan again with gatewayAPI: auto)",
        )
    states = {s: ons.pop() for s, ons in sorted(by_switch.items())}
    if facts.install_value is None:
        return states
    return {facts.install_value: all(states.values()), **states}


def renders(facts: GatewayApi, values: Mapping[str, Any]) -> set[str]:
    """The Gateway API CRDs the chart renders with ``values`` (user values merged with what a hop sends): a
    per-CRD switch decides when set; from 2.18, unset, ``install_value`` does (chart default ``default``)."""
    out = set()
    for name, switch in facts.crds.items():
        if switch in values or facts.install_value is None:
            on = values.get(switch, facts.default)
        else:
            on = values.get(facts.install_value, facts.default)
        if on:
            out.add(name)
    return out


def crd_rollback_refusal(
    crds: Sequence[GatewayCrd],
    facts: GatewayApi | None,
    values: Mapping[str, Any],
    *,
    release: str,
    namespace: str,
    target: str,
    known: bool = True,
) -> str | None:
    """Why rolling linkerd-crds back to chart ``target`` (``rollback --include-crds``) would harm the Gateway API
    CRDs, or None. ``facts``: the Gateway API facts of the target chart's major (None: it renders none);
    ``values``: the target revision's user values; ``known``: the catalog knows the target chart.

    Refused when the target renders a CRD linkerd-crds does not manage now (handed over by a keep policy,
    another release's, or nobody's: helm would take it back, or fail on it), renders one at an older bundle
    than the cluster's (a downgrade), or stops rendering one it manages that has no keep policy (helm would
    delete it, and every route with it)."""
    present = [c for c in crds if c.present]
    if not present:
        return None
    if not known:
        return (
            f"cannot tell which Gateway API CRDs {release} {target} renders (not in the catalog), and "
            f"{', '.join(c.name for c in present)} are in the cluster"
        )
    rendered = renders(facts, values) if facts is not None else set()
    problems = []
    for crd in present:
        ours = crd.owned_by(release, namespace)
        if crd.name in rendered and not ours:
            problems.append(f"take back {crd.name} ({crd.owner()}, bundle {crd.bundle or 'unknown'})")
        elif crd.name in rendered and facts is not None and _older(facts.bundle, crd.bundle):
            problems.append(f"downgrade {crd.name} from bundle {crd.bundle} to {facts.bundle}")
        elif crd.name not in rendered and ours and crd.policy != "keep":
            problems.append(f"delete {crd.name} (no {POLICY}: keep), and every route it holds")
    if not problems:
        return None
    return f"rolling {release} back to {target} would {'; '.join(problems)}"


def _older(bundle: str | None, than: str | None) -> bool:
    new, old = bundle_key(bundle), bundle_key(than)
    return new is not None and old is not None and new < old


def _check_served(
    number: int, leg: HopLeg, facts: GatewayApi | None, crds: Mapping[str, GatewayCrd], ours: Collection[str]
) -> None:
    """A hop into another major whose policy controller reads a route CRD at an API version the CRD in the
    cluster does not serve (one linkerd-crds does not render: another release's, or nobody's) is refused: the
    controller would ignore (from 2.18) or fail on those routes. A CRD whose versions were not observed is
    not judged."""
    if facts is None or leg.stop.major == leg.previous.major:
        return
    short = []
    for name, needed in sorted(facts.needs_served.items()):
        crd = crds.get(name)
        if crd is None or not crd.present or name in ours or not crd.served:
            continue
        if missing := [v for v in needed if v not in crd.served]:
            short.append(
                f"{name} ({crd.owner()}, bundle {crd.bundle or 'unknown'}) serves {', '.join(crd.served)}; "
                f"2.{leg.stop.major} needs {', '.join(needed)} (missing {', '.join(missing)})"
            )
    if short:
        raise GatewayRefused(
            "gateway-api-versions",
            f"hop {number} ({leg.previous} -> {leg.stop}): the Gateway API CRDs from outside linkerd-crds do not "
            f"serve the API versions 2.{leg.stop.major}'s policy controller reads: {'; '.join(short)}. Its routes "
            "would be ignored. Upgrade (or, going back, downgrade) those CRDs with the installer that owns them to "
            f"a Gateway API bundle that serves these versions (Linkerd's compatibility table; 2.{leg.stop.major}'s "
            f"linkerd-crds ships {facts.bundle or 'none'}), then plan again",
        )


def _check_required(
    number: int, leg: HopLeg, facts: GatewayApi | None, present: set[str], choice: Choice, *, linkerd_ok: bool
) -> None:
    """A hop into a major that expects CRDs nobody provides is refused, naming the ways out that would pass."""
    if facts is None or leg.stop.major <= leg.previous.major:
        return
    missing = [n for n in facts.required if n not in present]
    if not missing:
        return
    yourself = (
        f"install them yourself first (Gateway API bundle {facts.bundle or 'supported by Linkerd'}, with the "
        "installer that owns the Gateway API CRDs already in the cluster, if any)"
    )
    ways = (
        f"Either {yourself}, or set gatewayAPI: linkerd in the spec so linkerd-crds installs and manages them"
        if linkerd_ok
        else f"Some Gateway API CRDs are owned outside linkerd-crds, so {yourself}"
    )
    raise GatewayRefused(
        "gateway-api-missing",
        f"hop {number} ({leg.previous} -> {leg.stop}) needs the Gateway API CRDs {', '.join(missing)}, which are "
        f"not in the cluster, and 2.{leg.stop.major}'s linkerd-crds no longer installs them by default "
        f"(gatewayAPI: {choice}). {ways}",
    )
