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
from upgrader.errors import UpgraderError
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


@dataclass(frozen=True)
class Outgoing:
    """What to send to ``helm upgrade``, and the values the release will end up with."""

    values: dict[str, Any]
    reset_values: bool
    reuse_values: bool
    migration: Migration
    effective: dict[str, Any] = field(default_factory=dict)


VERSION_PIN = "linkerdVersion"  # the target chart's own value must win


def outgoing(
    strategy: Literal["reset-then-reuse", "reuse", "reset"],
    *,
    target_defaults: dict[str, Any],
    user_values: dict[str, Any],
    overrides: dict[str, Any],
    changes: list[ValuesChanges],
) -> Outgoing:
    """The values and flags for ``helm upgrade`` under ``strategy``; ValuesError if identity would change."""
    migration = migrate(user_values, changes)
    if strategy == "reset-then-reuse":
        kept = dict(migration.values)
        if VERSION_PIN in kept and VERSION_PIN not in overrides:
            kept.pop(VERSION_PIN)
            migration = Migration(kept, migration.moved, [*migration.dropped, VERSION_PIN])
        sent = deep_merge(kept, overrides)
        effective = deep_merge(target_defaults, sent)
        result = Outgoing(sent, reset_values=True, reuse_values=False, migration=migration, effective=effective)
    elif strategy == "reuse":
        effective = deep_merge(user_values, overrides)
        result = Outgoing(
            copy.deepcopy(overrides), reset_values=False, reuse_values=True, migration=migration, effective=effective
        )
    else:
        effective = deep_merge(target_defaults, overrides)
        result = Outgoing(
            copy.deepcopy(overrides), reset_values=True, reuse_values=False, migration=migration, effective=effective
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
