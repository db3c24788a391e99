"""Values handling for a control-plane upgrade: what is sent to helm, and how it differs.

Strategies (the spec's ``values.strategy``):

- ``reset-then-reuse`` (default): the release's user-supplied values (migrated per the
  catalog), then the spec's overrides, sent with ``--reset-values`` so helm takes every
  default from the target chart. Works the same on every helm version and never carries
  the old chart's defaults (the ``--reuse-values`` trap) nor drops the user's values (the
  ``--reset-values`` trap). Chart defaults are never sent as values: helm would store them
  as user-supplied and the next upgrade would carry them (an old ``linkerdVersion``). For
  the same reason a ``linkerdVersion`` pinned in the user values is dropped (reported).
- ``reuse``: ``--reuse-values`` plus the overrides. Keeps the old chart's defaults (old
  ``linkerdVersion``, keys new in the target missing); offered because some operators rely
  on it, and preflight reports what it would miss.
- ``reset``: ``--reset-values`` plus the overrides only: the user's values, including the
  identity certificates, are dropped. Refused here unless the overrides carry the
  certificates.

HA installations (``ha_target``/``ha_installed`` given): Linkerd installs HA with ``-f
values-ha.yaml`` of the chart, so the release's user values hold that file's settings too.
An upgrade layers the *target* chart's values-ha.yaml under the user's own values, as
Linkerd's docs do with the new chart's file: first the installed chart's values-ha.yaml
contributions are taken out of the user values (a user value equal to what that file sets at
the same path is the file's; a different value is the user's and stays; the identity values
always stay), then target file <- user's own values (migrated) <- overrides. Without this the
old file's settings travel as user values and what a major adds to the file (2.14:
``highAvailability``, ``policyControllerResources``) never arrives.

Migration moves renamed keys to their new place and drops removed ones (both reported).
The identity values (trust anchors, issuer certificate and key) must come out unchanged
unless the spec's overrides change them on purpose. ``diff`` compares old and new effective
values with secrets redacted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from upgrader.catalog import ValuesChanges
from upgrader.errors import InputError, UpgraderError
from upgrader.inputs import SPEC_CAP, load_yaml
from upgrader.redaction import REDACTED, redact_values
from upgrader.spec import deep_merge

IDENTITY_KEYS = ("identityTrustAnchorsPEM", "identity.issuer.tls.crtPEM", "identity.issuer.tls.keyPEM")


class ValuesError(UpgraderError):
    """The values for an upgrade cannot be made safely; nothing was sent."""

    exit_code = 3


def _get(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _pop(values: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    *parents, last = dotted.split(".")
    node: Any = values
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, dict) and last in node:
        return True, node.pop(last)
    return False, None


def _put(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


@dataclass(frozen=True)
class Migration:
    """What migrating user values to a major did."""

    values: dict[str, Any]
    moved: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def migrate(user_values: dict[str, Any], changes: list[ValuesChanges]) -> Migration:
    """Apply each major's renames and removals, in order, to a copy of ``user_values``."""
    values = copy.deepcopy(user_values)
    moved, dropped = [], []
    for change in changes:
        for old, new in change.renamed.items():
            found, value = _pop(values, old)
            if found:
                if _get(values, new) is None:
                    _put(values, new, value)
                moved.append((old, new))
        for key in change.removed:
            found, _ = _pop(values, key)
            if found:
                dropped.append(key)
    return Migration(values, moved, dropped)


def own_values(user_values: dict[str, Any], shipped: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``user_values`` without what the values file ``shipped`` contributed, and the paths taken out.

    A user value equal to what ``shipped`` sets at the same path is the file's contribution; a
    different value (or one the file does not set) is the user's own. The identity values always stay.
    """
    removed: list[str] = []

    def strip(user: dict[str, Any], theirs: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in user.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in theirs or path in IDENTITY_KEYS:
                out[key] = copy.deepcopy(value)
            elif isinstance(value, dict) and value and isinstance(theirs[key], dict):
                inner = strip(value, theirs[key], path)
                if inner:
                    out[key] = inner
            elif value == theirs[key]:
                removed.append(path)
            else:
                out[key] = copy.deepcopy(value)
        return out

    return strip(user_values, shipped, ""), removed


def values_file(text: str | None, what: str) -> dict[str, Any] | None:
    """A values file's text parsed (YAML anchors and aliases as Linkerd's values-ha.yaml uses them); None if absent."""
    if text is None:
        return None
    if len(text) > SPEC_CAP:
        raise ValuesError(f"{what} is larger than 1 MiB", hint=f"check {what} in the chart repository")
    try:  # aliases allowed (values-ha.yaml uses anchors) but their expansion, the depth and duplicate keys are capped
        loaded, _ = load_yaml(text, source=what, aliases=True)
    except InputError as exc:
        raise ValuesError(exc.message, hint=f"check {what} in the chart repository") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValuesError(f"{what} is not a map of values", hint=f"check {what} in the chart repository")
    return loaded


@dataclass(frozen=True)
class Outgoing:
    """What to send to ``helm upgrade``, and the values the release will end up with."""

    values: dict[str, Any]
    reset_values: bool
    reuse_values: bool
    migration: Migration
    effective: dict[str, Any] = field(default_factory=dict)
    ha_values: bool = False  # the target chart's values-ha.yaml is layered under the user's values
    ha_removed: list[str] = field(default_factory=list)  # the installed values-ha.yaml's contributions taken out


VERSION_PIN = "linkerdVersion"  # the target chart's own value must win


def outgoing(
    strategy: Literal["reset-then-reuse", "reuse", "reset"],
    *,
    target_defaults: dict[str, Any],
    user_values: dict[str, Any],
    overrides: dict[str, Any],
    changes: list[ValuesChanges],
    ha_target: dict[str, Any] | None = None,
    ha_installed: dict[str, Any] | None = None,
) -> Outgoing:
    """The values and flags for ``helm upgrade`` under ``strategy``; ValuesError if identity would change.

    ``ha_target`` (an HA installation: the target chart's values-ha.yaml) is layered under the
    user's own values: ``user_values`` without ``ha_installed``'s contributions (the installed
    chart's values-ha.yaml; see ``own_values``). None: no HA layers, the user values as they are.
    """
    own: dict[str, Any] = user_values
    ha_removed: list[str] = []
    if ha_target is not None:
        own, ha_removed = own_values(user_values, ha_installed or {})
    base = copy.deepcopy(ha_target) if ha_target is not None else {}
    migration = migrate(own, changes)
    if strategy == "reset-then-reuse":
        kept = dict(migration.values)
        if VERSION_PIN in kept and VERSION_PIN not in overrides:
            kept.pop(VERSION_PIN)
            migration = Migration(kept, migration.moved, [*migration.dropped, VERSION_PIN])
        sent = deep_merge(deep_merge(base, kept), overrides)
        effective = deep_merge(target_defaults, sent)
    elif strategy == "reuse":
        # helm keeps the old user values and merges what is sent over them: the target file, then the
        # user's own values again (so the file does not override them), then the overrides
        sent = deep_merge(deep_merge(base, own), overrides) if ha_target is not None else copy.deepcopy(overrides)
        effective = deep_merge(user_values, sent)
    else:
        sent = deep_merge(base, overrides)
        effective = deep_merge(target_defaults, sent)
    result = Outgoing(
        copy.deepcopy(sent),
        reset_values=strategy != "reuse",
        reuse_values=strategy == "reuse",
        migration=migration,
        effective=effective,
        ha_values=ha_target is not None,
        ha_removed=ha_removed,
    )
    changed = [
        key for key in IDENTITY_KEYS if _get(effective, key) != _get(user_values, key) and _get(overrides, key) is None
    ]
    if changed:
        raise ValuesError(
            f"the {strategy} strategy would change the identity values ({', '.join(changed)}): proxies and control "
            "plane would stop trusting each other",
            hint="keep the default strategy reset-then-reuse, or set the certificates explicitly in the spec's "
            "values.overrides to rotate them on purpose",
        )
    return result


def switched(user_values: dict[str, Any], switches: dict[str, Any], *, target_defaults: dict[str, Any]) -> Outgoing:
    """linkerd-crds' values for a hop: its user values with the hop's Gateway API switches over them.

    Sent with ``--reset-values`` (the target chart's defaults, never the old chart's, the
    ``--reuse-values`` trap); ``effective`` is what the release ends up with, for the values diff.
    """
    sent = deep_merge(copy.deepcopy(user_values), switches)
    return Outgoing(
        copy.deepcopy(sent),
        reset_values=True,
        reuse_values=False,
        migration=Migration(copy.deepcopy(sent)),
        effective=deep_merge(target_defaults, sent),
    )


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: values} if prefix else {}


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Changed keys between two effective values, secrets redacted: [{key, old, new}] sorted by key."""
    before, after = _flatten(redact_values(old)), _flatten(redact_values(new))
    rows = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a != b:
            rows.append({"key": key, "old": a, "new": b})
        elif a == REDACTED and _get(old, key) != _get(new, key):
            rows.append({"key": key, "old": REDACTED, "new": f"{REDACTED} (changed)"})
    return rows
